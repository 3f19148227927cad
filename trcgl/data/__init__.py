"""The data layer: PadChest metadata, label sets, splits, images, PadChest-Synth and the prepare stage."""

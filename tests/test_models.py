"""TRCGL-Net and its peers: shapes, gradients, attention maps, the label graph, config errors, weight loading."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import timm
import torch

from trcgl.config import ModelConfig
from trcgl.models import TRCGLNet, build_adjacency, build_model
from trcgl.models.gcn import LabelGCN

BACKBONE = "test_resnet"  # timm's tiny ResNet (96 feature channels, 0.4M parameters)
K = 5
SIZE = 64  # → 2×2 feature map

# every se × class_attention × gcn combination, and CSRA (class attention off) with and without se / gcn
CONFIGS = [dict(se=se, class_attention=ca, gcn=gcn) for se, ca, gcn in itertools.product((True, False), repeat=3)] + [
    dict(se=se, class_attention=False, csra=True, gcn=gcn) for se, gcn in itertools.product((True, False), repeat=2)
]


def config_id(overrides: dict) -> str:
    return "-".join(f"{k}={int(v)}" for k, v in overrides.items())


def tiny_cfg(**overrides) -> ModelConfig:
    return dataclasses.replace(ModelConfig(backbone=BACKBONE, gcn_hidden=16, label_embedding_dim=8), **overrides)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight a concurrent Ray test for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cooccurrence() -> np.ndarray:
    y = (np.random.default_rng(0).random((200, K)) < [0.5, 0.3, 0.2, 0.05, 0.02]).astype(np.int64)  # (N, K)
    return y.T @ y  # (K, K)


@pytest.mark.parametrize("overrides", CONFIGS, ids=config_id)
def test_shapes_attention_and_gradients(overrides: dict, cooccurrence: np.ndarray) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**overrides), K, cooccurrence)
    with torch.no_grad():  # timm zero-inits each residual branch's last BN, which blocks the branch's first gradient
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and not module.weight.any():
                module.weight.fill_(1.0)
    x = torch.rand(3, 1, SIZE, SIZE)
    logits, maps = model(x, return_attention=True)
    features = model.forward_features(x)
    assert features.shape == (3, model.backbone.num_features, 2, 2)
    assert logits.shape == (3, K)
    assert maps.shape == (3, K, 2, 2)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, K))
    torch.testing.assert_close(model(x), logits)  # same logits without the maps

    targets = (torch.rand(3, K, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).backward()
    params = dict(model.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], f"parameters without gradient: {no_grad}"


def test_parts_follow_the_config(cooccurrence: np.ndarray) -> None:
    full = build_model(tiny_cfg(), K, cooccurrence)
    assert full.attention is not None and isinstance(full.classifier, LabelGCN)
    plain = build_model(tiny_cfg(se=False, class_attention=False, gcn=False), K)
    assert plain.attention is None and isinstance(plain.se, torch.nn.Identity)
    assert not isinstance(plain.classifier, LabelGCN)
    # the plain peer is a linear layer on average-pooled features
    x = torch.rand(2, 1, SIZE, SIZE)
    pooled = plain.forward_features(x).mean(dim=(2, 3))  # (B, C)
    torch.testing.assert_close(plain(x), pooled @ plain.classifier().T + plain.bias)


def test_adjacency_by_hand() -> None:
    # classes A, B, C, D over 5 images: {A,B}, {A,B}, {A,C}, {A}, {B}; D never occurs
    y = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    counts = y.T @ y  # diag (4, 3, 1, 0); C[A,B] = 2, C[A,C] = 1, C[B,C] = 0
    # P(j|i): row A: B 2/4 = 0.5, C 1/4 = 0.25; row B: A 2/3; row C: A 1/1; row D: 0 (no positives)
    # tau = 0.25: A → {B, C}, B → {A}, C → {A}, D → {}; p = 0.2: two neighbours share 0.2, self-loop 0.8;
    # D keeps a self-loop of 1; every row sums to 1 so D^-1/2 A D^-1/2 changes nothing
    expected = np.array(
        [
            [0.8, 0.1, 0.1, 0.0],
            [0.2, 0.8, 0.0, 0.0],
            [0.2, 0.0, 0.8, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
        dtype=np.float32,
    )
    adj = build_adjacency(counts, tau=0.25, p=0.2)
    assert adj.dtype == torch.float32 and adj.shape == (4, 4)
    np.testing.assert_allclose(adj.numpy(), expected, atol=1e-7)
    # tau = 0.4 drops A → C (0.25 < 0.4): A keeps one neighbour with the whole 0.2
    expected_04 = expected.copy()
    expected_04[0] = [0.8, 0.2, 0.0, 0.0]
    np.testing.assert_allclose(build_adjacency(counts, tau=0.4, p=0.2).numpy(), expected_04, atol=1e-7)
    with pytest.raises(ValueError, match="gcn_p"):
        build_adjacency(counts, tau=0.4, p=1.5)


def test_label_gcn_propagates_along_rows() -> None:
    # one layer computes Â H Θ + b, so row i of the (asymmetric) Â is what node i aggregates
    adj = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    gcn = LabelGCN(adj, out_dim=4, hidden=8, layers=1, embedding_dim=3)
    conv = gcn.convs[0]
    expected = adj @ conv.lin(gcn.embeddings) + conv.bias  # (K, C)
    torch.testing.assert_close(gcn(), expected)


def test_fixed_label_embeddings(tmp_path, cooccurrence: np.ndarray) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, np.random.default_rng(0).normal(size=(K, 6)).astype(np.float32))
    model = build_model(tiny_cfg(label_embedding=str(path)), K, cooccurrence)
    assert "classifier.embeddings" not in dict(model.named_parameters())  # a fixed buffer, not trained
    assert model.classifier.embeddings.shape == (K, 6)
    assert model(torch.rand(2, 1, SIZE, SIZE)).shape == (2, K)
    np.save(path, np.zeros((K + 1, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="label_embedding"):
        build_model(tiny_cfg(label_embedding=str(path)), K, cooccurrence)


def test_config_errors(cooccurrence: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"model\.csra.*model\.class_attention"):
        TRCGLNet(tiny_cfg(csra=True, class_attention=True), K, cooccurrence)
    with pytest.raises(ValueError, match=r"model\.gcn"):
        TRCGLNet(tiny_cfg(gcn=True), K, None)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(5, 5\)"):
        TRCGLNet(tiny_cfg(), K, np.eye(4))
    with pytest.raises(ValueError, match="attention_temperature"):
        TRCGLNet(tiny_cfg(attention_temperature=0.0), K, cooccurrence)


def test_pretrained_weights_from_a_path(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    # an RGB checkpoint with a classifier: the stem is adapted to 1 channel, the fc keys are unexpected
    source = timm.create_model(BACKBONE, pretrained=False, in_chans=3, num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="trcgl.models.backbone"):
        model = build_model(tiny_cfg(gcn=False, pretrained=str(path)), K)
    assert "2 unexpected" in caplog.text and "0 missing" in caplog.text
    body = model.backbone.body
    torch.testing.assert_close(body.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    stem = source.conv1[0].weight  # (16, 3, 3, 3)
    assert body.conv1[0].weight.shape == (16, 1, 3, 3)
    torch.testing.assert_close(body.conv1[0].weight, stem.sum(dim=1, keepdim=True))


@pytest.mark.slow
def test_pretrained_weights_from_s3(s3_endpoint: str, s3_bucket: str, monkeypatch, tmp_path) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    source = timm.create_model(BACKBONE, pretrained=False, in_chans=1, num_classes=0, global_pool="")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").upload_file(
        str(path), s3_bucket, "weights/backbone.pth"
    )
    model = build_model(tiny_cfg(gcn=False, pretrained=f"s3://{s3_bucket}/weights/backbone.pth"), K)
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.backbone.body.state_dict()[name], value)


@pytest.mark.parametrize("backbone", ["test_convnext", "test_vit"])
def test_other_backbones_give_spatial_maps(backbone: str, cooccurrence: np.ndarray) -> None:
    # ViT tokens are laid back out on the patch grid (test_vit: 160 px, patch 16 → 10×10)
    model = build_model(tiny_cfg(backbone=backbone), K, cooccurrence)
    size = 160 if backbone == "test_vit" else SIZE
    logits, maps = model(torch.rand(2, 1, size, size), return_attention=True)
    assert logits.shape == (2, K)
    assert maps.shape[:2] == (2, K) and maps.shape[2] == maps.shape[3] > 1


# ------------------------------------------------------------------------------------------- peers as published


def test_output_stride_gives_the_documented_map_size() -> None:
    x = torch.rand(2, 1, SIZE, SIZE)
    for stride, side in ((32, 2), (16, 4), (8, 8)):
        model = build_model(tiny_cfg(output_stride=stride, gcn=False), K, None)
        _, maps = model(x, return_attention=True)
        assert model.forward_features(x).shape[-2:] == (side, side) == maps.shape[-2:]
    with pytest.raises(ValueError, match=r"model\.output_stride.*12"):
        build_model(tiny_cfg(output_stride=12, gcn=False), K, None)


def test_bias_starts_at_the_train_log_prior(cooccurrence: np.ndarray) -> None:
    model = build_model(tiny_cfg(gcn=False), K, cooccurrence, num_train=200)
    prior = np.diag(cooccurrence) / 200
    np.testing.assert_allclose(torch.sigmoid(model.bias.detach()).numpy(), prior, rtol=1e-5)
    np.testing.assert_allclose(model.bias.detach().numpy(), np.log(prior / (1 - prior)), rtol=1e-5)
    # a class without positives gets a finite bias at half an image's prevalence
    empty = cooccurrence.copy()
    empty[4, :] = empty[:, 4] = 0
    bias = build_model(tiny_cfg(gcn=False), K, empty, num_train=200).bias.detach().numpy()
    assert bias[4] == pytest.approx(np.log(0.0025 / 0.9975), rel=1e-5)
    assert not build_model(tiny_cfg(gcn=False, bias_init="zero"), K, cooccurrence, num_train=200).bias.any()


def test_ppmi_features_of_a_hand_built_label_matrix() -> None:
    from trcgl.models.gcn import ppmi_embeddings

    # 8 images, 3 classes: A on images 0-3, B on 2-5, C on 6 only (A and B overlap on 2 images; C alone)
    y = np.zeros((8, 3), dtype=np.int64)
    y[0:4, 0] = 1
    y[2:6, 1] = 1
    y[6, 2] = 1
    counts = y.T @ y
    # hand: P(A) = P(B) = 1/2, P(C) = 1/8, P(A, B) = 1/4 → PMI(A, B) = log(1/4 / (1/4)) = 0;
    # PMI(A, A) = -log(1/2) = log 2, PMI(C, C) = log 8, PMI(A, C) undefined (count 0) → 0
    ppmi = np.diag([np.log(2), np.log(2), np.log(8)])
    features = ppmi_embeddings(counts, num_images=8, dim=3).numpy()
    # PPMI is diagonal here, so its SVD components are the axes: each class's feature is one axis, unit norm
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(features @ features.T, np.eye(3), atol=1e-6)  # orthogonal: no shared information
    u, s, _ = np.linalg.svd(ppmi)
    assert s[0] == pytest.approx(np.log(8))  # C's own information is the leading component
    assert features[2, 0] == pytest.approx(1.0, abs=1e-6)  # and its sign is fixed positive
    assert ppmi_embeddings(counts, 8, dim=2).shape == (3, 2)
    assert ppmi_embeddings(counts, 8, dim=10).shape == (3, 3)  # at most K components

    # A and B always together: PMI(A, B) = log(1/2 / 1/4) = log 2 > 0, so their features align
    y2 = np.zeros((8, 3), dtype=np.int64)
    y2[0:4, 0] = y2[0:4, 1] = 1
    y2[6, 2] = 1
    same = ppmi_embeddings(y2.T @ y2, 8, 3).numpy()
    assert same[0] @ same[1] == pytest.approx(1.0, abs=1e-6)
    assert abs(same[0] @ same[2]) < 1e-6


def test_reference_adjacency_is_ml_gcn_s_gen_a_and_gen_adj(cooccurrence: np.ndarray) -> None:
    tau, p = 0.3, 0.25
    # ML-GCN's util.gen_A and gen_adj, written out with numpy (counts / nums, binarise, column re-weighting, + I;
    # then D^-1/2 applied as (A D)^T D)
    cond = cooccurrence / np.diag(cooccurrence)[:, None]
    np.fill_diagonal(cond, 0)
    binary = (cond >= tau).astype(np.float64)
    a = binary * p / (binary.sum(0, keepdims=True) + 1e-6) + np.identity(K)
    d = np.diag(np.power(a.sum(1), -0.5))
    expected = (a @ d).T @ d
    got = build_adjacency(cooccurrence, tau, p, "reference").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    paper = build_adjacency(cooccurrence, tau, p, "paper").numpy()
    # the paper's node i aggregates the j that i implies; the reference's the j that imply i
    off = ~np.eye(K, dtype=bool)
    assert ((paper > 0) & off).tolist() == ((cond >= tau) & off).tolist()
    assert ((got > 1e-9) & off).tolist() == ((cond.T >= tau) & off).tolist()
    with pytest.raises(ValueError, match="gcn_adjacency"):
        build_adjacency(cooccurrence, tau, p, "transposed")


def test_ml_gcn_peer_as_published(cooccurrence: np.ndarray) -> None:
    cfg = tiny_cfg(
        se=False,
        class_attention=False,
        gcn=True,
        pool="max",
        gcn_bias=False,
        gcn_adjacency="reference",
        label_embedding="ppmi",
        label_embedding_dim=4,
    )
    model = build_model(cfg, K, cooccurrence, num_train=200)
    assert all(conv.bias is None for conv in model.classifier.convs)
    assert not model.classifier.embeddings.requires_grad and model.classifier.embeddings.shape == (K, 4)
    x = torch.rand(2, 1, SIZE, SIZE)
    features = model.forward_features(x)
    weight = model.classifier()
    expected = features.amax(dim=(2, 3)) @ weight.T + model.bias  # global max pooling, then the GCN classifiers
    torch.testing.assert_close(model.forward_head(features), expected)
    # the features are a buffer of the checkpoint: a model rebuilt without counts loads them back
    rebuilt = build_model(cfg, K, cooccurrence)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.classifier.embeddings, model.classifier.embeddings)


def test_cosine_classifier_and_csra_temperature(cooccurrence: np.ndarray) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, SIZE, SIZE)
    model = build_model(tiny_cfg(se=False, class_attention=False, gcn=False, cosine_classifier=True), K, None)
    features = model.forward_features(x)
    pooled = features.mean(dim=(2, 3))
    weight = model.classifier()
    cos = torch.nn.functional.cosine_similarity(pooled[:, None, :], weight[None, :, :], dim=-1)  # (B, K)
    torch.testing.assert_close(model.forward_head(features), 30.0 * cos + model.bias)
    with pytest.raises(ValueError, match=r"model\.csra.*model\.cosine_classifier"):
        build_model(tiny_cfg(class_attention=False, csra=True, cosine_classifier=True, gcn=False), K, None)

    from trcgl.models.heads import csra_logits

    scores = torch.randn(2, K, 4, 4)
    flat = scores.flatten(2)
    one = flat.mean(-1) + 0.1 * (flat * flat.softmax(-1)).sum(-1)  # the reference head at T = 1
    torch.testing.assert_close(csra_logits(scores, 0.1, 1.0), one)
    torch.testing.assert_close(csra_logits(scores, 0.1, 99.0), flat.mean(-1) + 0.1 * flat.amax(-1))
    assert not torch.allclose(csra_logits(scores, 0.1, 1.0), csra_logits(scores, 0.1, 99.0))

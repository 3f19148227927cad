"""The ablation and peer study (``jobs.ablation``): its rows and run layout (``rows``), statistics, table and pictures
(``table``), and the Ray Tune driver that trains every row and seed (``ray_ablation``)."""

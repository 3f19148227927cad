"""The end-to-end pipeline (``jobs.pipeline``): the stages in order (``ray_pipeline``) and its report (``report``,
rendered by ``html``)."""

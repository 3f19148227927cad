"""Applying a trained classifier to new images: ``python -m jobs.predict`` (README "Predicting on new images").

``sources`` lists what to score and cuts it into parts, ``scorer`` scores and writes one part (no Ray), and
``ray_predict`` runs the parts on a Ray Data actor pool and writes the report.
"""

"""Grading: autograder sessions on the engine, the pytest plugin, results, and the instructors' side.

One grade: ``session`` (what a test uses), ``plugin`` (points, deadlines, reports), ``results``.
Many grades: ``gradejob`` (one grade in its own process), ``mutation``, ``batch``, ``sandbox``,
``farm``, ``gradebook``, ``export`` and ``watch``.
"""

"""celerylab: learn Celery by running real tasks on real workers.

The package has three layers, each importing only from the ones before it:

- ``celerylab.engine``: real brokers, namespaces, worker and beat processes, the task timeline, stubs;
- ``celerylab.grading``: autograder sessions, the pytest plugin, results, the catalogue, and the
  instructors' side (batch, sandbox, farm, exports, watch);
- ``celerylab.study``: what a learner studies with: quiz, interview, notebook playground, progress.

``celerylab.cli`` is the thin ``celerylab`` command on top.
"""

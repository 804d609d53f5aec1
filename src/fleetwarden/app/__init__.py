"""The application layer: the services every face calls (docs/architecture.md).

A :class:`~fleetwarden.app.session.DetectionSession` owns what one detection run needs beside the
pure engine: the flow model, warm-up, the garbage-collector policy, the process/flush loop,
correlation and recording to the store.  The services are built on it: :mod:`.analyze`,
:mod:`.modeling` (train, score, evaluate), :mod:`.watch`, :mod:`.worker` and :mod:`.demo`.  The
CLI (and the coming API) parse, call one of these, and render what it returns.
"""

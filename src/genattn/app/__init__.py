"""The application: the ``genattn`` command line, the demo, the study, benchmarks and pictures.

It is built on the library (:mod:`genattn.attention`, :mod:`genattn.models`, :mod:`genattn.data`,
:mod:`genattn.engine`) and imports it; the library never imports the application.
"""

"""What the commands of ``pipelines`` share: the training engine, its runs, studies and workers (see
``pipelines/__init__.py`` for the map)."""

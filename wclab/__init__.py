"""wclab — a Jupyter-first research kit for WorldCanvas (trajectory + text promptable image-to-video).

Data flows one way: ``conditions`` → ``encode`` → ``models`` → ``sampler``/``session`` → ``inspect``.
"""
__version__ = "0.1.0"

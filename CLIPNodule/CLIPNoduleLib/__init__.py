"""Scene logic of the CLIPNodule Slicer module: MRML nodes in, MRML nodes out, prediction in a worker.

Submodules need MRML (Slicer or the slicer-core wheel) where they touch nodes, and never
Qt. Importing the package itself imports nothing else, so the worker process can use it.
"""

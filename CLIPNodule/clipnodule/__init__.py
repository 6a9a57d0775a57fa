"""CLIPNodule: lung-nodule malignancy risk from chest CT with a CLIP vision-language model.

The library has no Qt or Slicer imports. Heavy modules (torch, open_clip) load only
when a model is built, so `import clipnodule` stays fast.
"""

__version__ = "0.1.0"

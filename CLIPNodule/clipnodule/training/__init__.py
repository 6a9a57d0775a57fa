"""Training-time code: data set tables, semantic features, report text and the training loop.

Nothing here is needed for inference, and nothing here imports Qt or Slicer. Submodules
are imported explicitly (`from clipnodule.training import dataset_table`) so that this
package stays cheap to import.
"""

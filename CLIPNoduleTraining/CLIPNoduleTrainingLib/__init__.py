"""Logic of the CLIPNoduleTraining Slicer module: the training process and its loss plot.

No Qt; `training_process` needs neither MRML nor Slicer, `loss_plot` needs MRML only.
"""

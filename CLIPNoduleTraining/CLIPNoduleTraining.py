"""CLIPNoduleTraining Slicer module: train a five-fold CLIP nodule model in a background process.

Qt and GUI wiring only; it runs inside the 3D Slicer application. The run is the
`clipnodule train` command started with Slicer's Python (`CLIPNoduleTrainingLib.
training_process`); its log streams into the panel and its per-epoch CSV log into a
loss plot. The finished bundle can be handed to the CLIPNodule module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CLIPNoduleTrainingLib import loss_plot, training_process

POLL_INTERVAL_MS = 500


@parameterNodeWrapper
class CLIPNoduleTrainingParameterNode:
    datasetPath: Path = Path()
    outputDirectory: Path = Path()
    weightsPath: Path = Path()
    tuning: Annotated[str, Choice(list(training_process.TUNING_CHOICES))] = "lora"
    visionOnly: bool = False
    epochs: Annotated[int, WithinRange(1, 1000)] = 100
    patience: Annotated[int, WithinRange(1, 100)] = 5
    batchSize: Annotated[int, WithinRange(1, 512)] = 16
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = 1e-4
    weightDecay: Annotated[float, WithinRange(0.0, 10.0)] = 0.1
    folds: Annotated[int, WithinRange(2, 20)] = 5
    testFraction: Annotated[float, WithinRange(0.0, 0.9)] = 0.2
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(list(training_process.DEVICE_CHOICES))] = "auto"
    modelName: str = "clipnodule-model"
    resume: bool = False


def _pathText(path: Path) -> str:
    text = str(path) if path else ""
    return "" if text == "." else text


class CLIPNoduleTraining(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CLIPNodule Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Lung")]
        self.parent.dependencies = []
        self.parent.contributors = ["CLIPNodule contributors"]
        self.parent.helpText = _(
            "Trains a CLIPNodule model (five-fold cross-validation, LoRA) from a data set CSV of CT paths, "
            "nodule coordinates (LPS mm), labels and optional semantic features. Training runs in a "
            "background process; stopping keeps the last finished epoch, and Resume continues from it."
        )
        self.parent.acknowledgementText = _(
            "Method: Zhuang et al., Journal of Biomedical Informatics 2025. Backbone: OpenAI CLIP through open_clip."
        )


class CLIPNoduleTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel: options bound to the parameter node, start/stop, log, loss plot."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None
        self._plotWidget = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CLIPNoduleTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CLIPNoduleTrainingLogic()

        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.lossPlotFrame.layout().addWidget(self._plotWidget)

        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.useBundleButton.connect("clicked(bool)", self.onUseBundle)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPoll)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        # Called when Slicer exits or the module is reloaded: nothing would watch the run any
        # more, so stop it (Resume continues from the last finished epoch).
        self.removeObservers()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None:
            self.logic.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Stop GUI updates while the module is hidden; enter() connects the node again.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        # The scene close removes the parameter node, so stop using it.
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _options(self) -> training_process.TrainingOptions:
        return self.logic.options(self._parameterNode, self.ui.backboneComboBox.currentText)

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        valid, reason = self._options().isValid()
        running = self.logic.isRunning()
        self.ui.startButton.enabled = valid and not running
        self.ui.startButton.toolTip = reason or _("Start training in a background process.")
        self.ui.stopButton.enabled = running

    def onStart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            options = self._options()
            if not self.logic.installDependencies():
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setValue(0)
            self.ui.useBundleButton.enabled = False
            self.logic.start(options)
            self.ui.logTextEdit.appendPlainText(" ".join(self.logic.process.command))
            self.ui.statusLabel.text = _("Training started.")
            self._pollTimer.start()
            self._updateButtons()

    def onStop(self) -> None:
        self.logic.stop()
        self.ui.statusLabel.text = _("Stopped. Tick Resume and start again to continue from the last finished epoch.")
        self._updateButtons()

    def onPoll(self) -> None:
        for line in self.logic.process.poll_lines():
            self.ui.logTextEdit.appendPlainText(line)
            event = training_process.parse_progress_line(line)
            if isinstance(event, training_process.EpochProgress):
                fraction = training_process.progress_fraction(event, self.logic.options_used.folds)
                self.ui.progressBar.setValue(int(1000 * fraction))
                self.ui.statusLabel.text = _("Fold {fold}, epoch {epoch}: validation loss {loss:.4f}").format(
                    fold=event.fold, epoch=event.epoch, loss=event.val_loss
                )
            elif isinstance(event, training_process.FoldStarted):
                self.ui.statusLabel.text = _("Fold {fold} started.").format(fold=event.fold)

        chartNode = self.logic.updateLossChart()
        if chartNode is not None:
            plotViewNode = self._plotWidget.mrmlPlotViewNode()
            if plotViewNode is None:
                plotViewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "CLIPNodule training view")
                self._plotWidget.setMRMLPlotViewNode(plotViewNode)
            plotViewNode.SetPlotChartNodeID(chartNode.GetID())

        if not self.logic.isRunning():
            self._pollTimer.stop()
            self._finish()
            self._updateButtons()

    def _finish(self) -> None:
        for line in self.logic.process.poll_lines():
            self.ui.logTextEdit.appendPlainText(line)
        bundle = self.logic.finishedBundle()
        if bundle is not None:
            self.ui.progressBar.setValue(1000)
            self.ui.statusLabel.text = _("Finished.")
            self.ui.bundlePathLabel.text = str(bundle)
            self.ui.useBundleButton.enabled = True
        elif self.logic.process.returncode not in (0, None):
            self.ui.statusLabel.text = _("Training ended with status {status}; see the log.").format(
                status=self.logic.process.returncode
            )

    def onUseBundle(self) -> None:
        bundle = self.logic.finishedBundle()
        if bundle is not None:
            self.logic.offerBundleToCLIPNodule(bundle)


class CLIPNoduleTrainingLogic(ScriptedLoadableModuleLogic):
    """Starts, watches and stops the training process; usable headless from a script."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.process = None
        self.options_used = None

    def getParameterNode(self):
        return CLIPNoduleTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def options(parameterNode, backbone: str = "ViT-B-32-quickgelu") -> training_process.TrainingOptions:
        return training_process.TrainingOptions(
            dataset=_pathText(parameterNode.datasetPath),
            output=_pathText(parameterNode.outputDirectory),
            backbone=backbone,
            weights_path=_pathText(parameterNode.weightsPath),
            tuning=parameterNode.tuning,
            vision_only=parameterNode.visionOnly,
            epochs=parameterNode.epochs,
            patience=parameterNode.patience,
            batch_size=parameterNode.batchSize,
            lr=parameterNode.learningRate,
            weight_decay=parameterNode.weightDecay,
            folds=parameterNode.folds,
            test_fraction=parameterNode.testFraction,
            seed=parameterNode.seed,
            device=parameterNode.device,
            resume=parameterNode.resume,
            name=parameterNode.modelName or "clipnodule-model",
        )

    @staticmethod
    def installDependencies() -> bool:
        from CLIPNoduleLib.install_logic import TRAINING_REQUIREMENTS, InstallLogic

        return InstallLogic.for_slicer().ensure(TRAINING_REQUIREMENTS)

    @staticmethod
    def _environment() -> dict:
        import clipnodule
        from CLIPNoduleLib.analysis_runner import child_environment

        return child_environment([Path(clipnodule.__file__).resolve().parents[1]])

    def start(self, options: training_process.TrainingOptions) -> None:
        from CLIPNoduleLib.analysis_runner import python_executable

        valid, reason = options.isValid()
        if not valid:
            raise ValueError(reason)
        if self.isRunning():
            raise RuntimeError(_("A training run is already in progress; stop it first."))
        Path(options.output).mkdir(parents=True, exist_ok=True)
        self.options_used = options
        self.process = training_process.TrainingProcess(
            training_process.build_command(options, python_executable()), environment=self._environment()
        )
        self.process.start()
        logging.info("CLIPNodule training started: %s", " ".join(self.process.command))

    def isRunning(self) -> bool:
        return self.process is not None and self.process.running

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def updateLossChart(self):
        if self.options_used is None:
            return None
        rows = training_process.read_epoch_log(self.options_used.epoch_log_path)
        return loss_plot.update_loss_chart(slicer.mrmlScene, rows) if rows else None

    def finishedBundle(self):
        if self.options_used is None or self.process is None or self.process.returncode != 0:
            return None
        bundle = self.options_used.bundle_path
        return bundle if (bundle / "manifest.json").is_file() else None

    def trainBlocking(self, options: training_process.TrainingOptions) -> Path:
        """Run training to the end in this thread, logging every line (for headless scripts)."""
        self.start(options)
        while self.process.running:
            for line in self.process.poll_lines():
                logging.info("%s", line)
            time.sleep(0.5)
        status = self.process.wait()
        for line in self.process.poll_lines():
            logging.info("%s", line)
        bundle = self.finishedBundle()
        if bundle is None:
            raise RuntimeError(f"Training ended with status {status} and no bundle in {options.bundle_path}.")
        return bundle

    @staticmethod
    def offerBundleToCLIPNodule(bundle: Path) -> None:
        from CLIPNoduleLib.parameters import LOCAL_BUNDLE_CHOICE

        parameterNode = slicer.util.getModuleLogic("CLIPNodule").getParameterNode()
        parameterNode.modelName = LOCAL_BUNDLE_CHOICE
        parameterNode.localBundlePath = Path(bundle)
        slicer.util.selectModule("CLIPNodule")


class CLIPNoduleTrainingTest(ScriptedLoadableModuleTest):
    """Self-test: the command line and the loss chart, without starting a real training run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_command_and_chart()

    def test_command_and_chart(self):
        options = training_process.TrainingOptions(dataset="cases.csv", output="run", epochs=3, folds=2)
        command = training_process.build_command(options, "python")
        self.assertEqual(command[:4], ["python", "-m", "clipnodule", "train"])
        self.assertIn("--epochs", command)
        rows = {0: [{"epoch": 1.0, "train_loss": 0.9, "val_loss": 1.0}, {"epoch": 2.0, "train_loss": 0.7, "val_loss": 0.8}]}
        chart = loss_plot.update_loss_chart(slicer.mrmlScene, rows)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")

"""CLIPNodule Slicer module: lung-nodule malignancy risk from a chest CT and a clicked point.

Qt and GUI wiring only; it runs inside the 3D Slicer application. The work lives in
`CLIPNoduleLib` (MRML, no Qt) and the `clipnodule` library (no Qt, no Slicer), and
prediction runs in a worker process so the GUI never freezes.
"""

from __future__ import annotations

import logging
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

from CLIPNoduleLib import layout, model_registry, parameters, result_nodes, scene_logic
from CLIPNoduleLib.analysis_logic import AnalysisSession
from CLIPNoduleLib.install_logic import InstallLogic

POLL_INTERVAL_MS = 200


# parameterNodeWrapper reads these annotations with typing.get_type_hints, which looks names
# up in this module's globals, so the class and every name it uses stay at module level.
@parameterNodeWrapper
class CLIPNoduleParameterNode:
    """Module state saved in the scene.

    resultsTable and reportText are the result nodes of the last run. device is auto,
    cuda or cpu. modelImageOpacity (0 to 1) is the opacity of the model image overlay
    in the nine views.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    inputPoints: slicer.vtkMRMLMarkupsFiducialNode
    resultsTable: slicer.vtkMRMLTableNode
    reportText: slicer.vtkMRMLTextNode
    modelName: str = ""
    localBundlePath: Path = Path()
    device: Annotated[str, Choice(list(parameters.DEVICE_CHOICES))] = "auto"
    modelImageOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    semanticReport: bool = True


class CLIPNodule(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CLIPNodule")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Lung")]
        self.parent.dependencies = []
        self.parent.contributors = ["CLIPNodule contributors"]
        self.parent.helpText = _(
            "Estimates the one-year malignancy risk of a lung nodule from a chest CT. Place a point on the "
            "nodule centre and press Analyze: the module shows the nine planes the model sees, the calibrated "
            "risk (ensemble and per fold), each plane's attention weight and a zero-shot semantic report. "
            "Research use only."
        )
        self.parent.acknowledgementText = _(
            "Method: Zhuang et al., Vision-Language Model-Based Semantic-Guided Imaging Biomarker for Lung "
            "Nodule Malignancy Prediction, Journal of Biomedical Informatics 2025. Backbone: OpenAI CLIP "
            "through open_clip."
        )

        # Register the nine-plane layout once the application is up, so a saved scene that
        # uses it gets its views back even before this module is opened.
        slicer.app.connect("startupCompleted()", registerPlanesLayout)


def registerPlanesLayout() -> None:
    """Add the nine-plane layout description to the layout node (no-op without a main window)."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is not None:
        layout.register_layout(layoutManager.layoutLogic().GetLayoutNode())


class CLIPNoduleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Module panel: binds the .ui widgets to the parameter node and relays worker events."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._pollTimer = None
        self._plotWidget = None
        self._observedPoints = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CLIPNodule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CLIPNoduleLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._setupModelChoices()
        self._setupResultWidgets()

        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyze)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.deleteCacheButton.connect("clicked(bool)", self.onDeleteCache)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)
        self.ui.exportJsonButton.connect("clicked(bool)", self.onExportJson)
        self.ui.showPlanesLayoutButton.connect("clicked(bool)", self.logic.showPlanesLayout)
        self.ui.restoreLayoutButton.connect("clicked(bool)", self.logic.restorePreviousLayout)
        self.ui.displayedNoduleComboBox.connect("currentIndexChanged(int)", self.onDisplayedNoduleChanged)
        self.ui.modelImageOpacitySlider.connect("valueChanged(double)", self.onModelImageOpacityChanged)
        self.ui.inputPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.pointsPlaceWidget.setCurrentNode)
        self.ui.pointsPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPoll)

        self.initializeParameterNode()

    def onReload(self) -> None:
        """Reload the CLIPNoduleLib submodules too, then the module file (developer Reload button)."""
        import importlib
        import sys

        for name in sorted(name for name in sys.modules if name.startswith("CLIPNoduleLib.")):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    # Setup helpers.

    def _setupModelChoices(self) -> None:
        self.ui.modelComboBox.clear()
        try:
            registry = self.logic.registry()
            for name in registry.names:
                self.ui.modelComboBox.addItem(name)
        except Exception as error:  # noqa: BLE001 - a broken registry must not block local bundles
            logging.error("CLIPNodule: %s", error)
        self.ui.modelComboBox.addItem(parameters.LOCAL_BUNDLE_CHOICE)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.cacheFolderLabel.text = _("Model cache: {folder}").format(folder=model_registry.model_cache_dir())

    def _setupResultWidgets(self) -> None:
        self.ui.foldsTableWidget.setColumnCount(3)
        self.ui.foldsTableWidget.setHorizontalHeaderLabels([_("Fold"), _("Raw"), _("Calibrated")])
        self.ui.attentionTableWidget.setColumnCount(2)
        self.ui.attentionTableWidget.setHorizontalHeaderLabels([_("Plane"), _("Attention")])
        for table in (self.ui.foldsTableWidget, self.ui.attentionTableWidget):
            table.horizontalHeader().setStretchLastSection(True)
            table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)

        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.attentionChartFrame.layout().addWidget(self._plotWidget)

    # Parameter node.

    def cleanup(self) -> None:
        self.removeObservers()
        self._observedPoints = None
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Stop GUI updates while the module is hidden; enter() connects the node again.
        # Going through setParameterNode also avoids a second removeObserver there, which
        # VTKObservationMixin reports with a "does not have observer" warning.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.resetSession()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume
        # A scene saved with a model that the registry no longer lists falls back to the first entry.
        if not self._parameterNode.modelName or self.ui.modelComboBox.findText(self._parameterNode.modelName) < 0:
            self._parameterNode.modelName = self.ui.modelComboBox.itemText(0)
        self.ui.modelComboBox.setCurrentText(self._parameterNode.modelName)
        self.onModelChanged(self._parameterNode.modelName)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateAnalyzeButton)
            self._observePoints(None)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateAnalyzeButton)
            self._updateAnalyzeButton()

    def _observePoints(self, pointsNode) -> None:
        """Re-check the Analyze button when points of the selected list are placed or removed."""
        if pointsNode is self._observedPoints:
            return
        events = [getattr(slicer.vtkMRMLMarkupsNode, name) for name in parameters.POINT_COUNT_EVENT_NAMES]
        if self._observedPoints is not None:
            for event in events:
                self.removeObserver(self._observedPoints, event, self._updateAnalyzeButton)
        self._observedPoints = pointsNode
        if pointsNode is not None:
            for event in events:
                self.addObserver(pointsNode, event, self._updateAnalyzeButton)

    def _updateAnalyzeButton(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        self._observePoints(self._parameterNode.inputPoints)
        valid, reason = parameters.parameters_from_node(self._parameterNode).isValid()
        running = self.logic.isRunning()
        self.ui.analyzeButton.enabled = valid and not running
        self.ui.analyzeButton.toolTip = reason or _("Score every placed point of the point list.")
        self.ui.cancelButton.enabled = running

    # Model choice and cache.

    def onModelChanged(self, name: str) -> None:
        if self._parameterNode is not None and name:
            self._parameterNode.modelName = name
        isLocal = name == parameters.LOCAL_BUNDLE_CHOICE
        self.ui.localBundlePathButton.enabled = isLocal
        self.ui.modelDescriptionLabel.text = self.logic.describeModel(name)

    def onDeleteCache(self) -> None:
        folder = model_registry.model_cache_dir()
        if not slicer.util.confirmOkCancelDisplay(
            _("Delete the downloaded and imported model bundles in {folder}?").format(folder=folder)
        ):
            return
        deleted = model_registry.delete_cached_models(folder)
        slicer.util.infoDisplay(_("Deleted {count} item(s) from {folder}.").format(count=len(deleted), folder=folder))
        self.onModelChanged(self.ui.modelComboBox.currentText)

    # Running.

    def onAnalyze(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("CLIPNodule analysis could not start."), waitCursor=True):
            if not self.logic.installDependencies():
                return
            bundle = self.logic.resolveBundle(self._parameterNode, self._downloadProgressDialog())
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Starting the worker...")
            self.logic.showPlanesLayout()
            self.logic.startAnalysis(self._parameterNode, bundle)
            self._pollTimer.start()
            self._updateAnalyzeButton()

    def _downloadProgressDialog(self):
        dialog = slicer.util.createProgressDialog(
            labelText=_("Downloading the model..."), maximum=100, windowTitle=_("CLIPNodule")
        )
        dialog.hide()

        def progress(done: int, total: int | None) -> None:
            dialog.show()
            dialog.setValue(int(100 * done / total) if total else 0)
            slicer.app.processEvents()

        progress.dialog = dialog
        return progress

    def onCancel(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled.")

    def onPoll(self) -> None:
        update = self.logic.poll()
        for line in update.log_lines:
            self.ui.logTextEdit.appendPlainText(line)
        if update.progress_total:
            self.ui.progressBar.setMaximum(update.progress_total)
            self.ui.progressBar.setValue(update.progress_done or 0)
        if update.progress_message:
            self.ui.statusLabel.text = update.progress_message
        if update.new_results:
            self._refreshNoduleChoices()
        if update.finished:
            self._pollTimer.stop()
            if update.error:
                self.ui.statusLabel.text = update.error
                if update.error != "Cancelled.":
                    slicer.util.errorDisplay(_("CLIPNodule analysis failed: {error}").format(error=update.error))
            else:
                self.ui.statusLabel.text = _("Done.")
                self.ui.timeDeviceLabel.text = _("Last run: {seconds:.1f} s on {device}").format(
                    seconds=update.run_time_s or 0.0, device=self.logic.session.device_used or "?"
                )
            self._updateAnalyzeButton()

    # Results.

    def _refreshNoduleChoices(self) -> None:
        labels = [str(result.get("point_label")) for result in self.logic.session.results]
        wasBlocked = self.ui.displayedNoduleComboBox.blockSignals(True)
        current = self.ui.displayedNoduleComboBox.currentText
        self.ui.displayedNoduleComboBox.clear()
        for label in labels:
            self.ui.displayedNoduleComboBox.addItem(label)
        self.ui.displayedNoduleComboBox.setCurrentText(current if current in labels else labels[0])
        self.ui.displayedNoduleComboBox.blockSignals(wasBlocked)
        self.onDisplayedNoduleChanged()

    def onDisplayedNoduleChanged(self, index=None) -> None:
        label = self.ui.displayedNoduleComboBox.currentText
        result = self.logic.resultFor(label)
        if result is None:
            return
        self.logic.showNodule(label, self.ui.modelImageOpacitySlider.value)
        self._setViewTitles()

        calibrated = result.get("calibrated", True)
        self.ui.riskLabel.text = _("Risk ({label}): {risk:.3f}{note}").format(
            label=label, risk=float(result["risk"]), note="" if calibrated else _(" (uncalibrated)")
        )
        folds = result.get("folds", [])
        self.ui.foldsTableWidget.setRowCount(len(folds))
        for row, fold in enumerate(folds):
            calibratedValue = fold.get("calibrated_probability")
            values = [
                str(fold["index"]),
                f"{float(fold['raw_probability']):.3f}",
                "-" if calibratedValue is None else f"{float(calibratedValue):.3f}",
            ]
            for column, text in enumerate(values):
                self.ui.foldsTableWidget.setItem(row, column, qt.QTableWidgetItem(text))

        names, weights = result.get("plane_names", []), result.get("attention", [])
        self.ui.attentionTableWidget.setRowCount(len(weights))
        for row, (name, weight) in enumerate(zip(names, weights)):
            self.ui.attentionTableWidget.setItem(row, 0, qt.QTableWidgetItem(name))
            self.ui.attentionTableWidget.setItem(row, 1, qt.QTableWidgetItem(f"{float(weight):.3f}"))

        chartNode = result_nodes.attention_chart_nodes(slicer.mrmlScene, result)[2]
        plotViewNode = self._plotWidget.mrmlPlotViewNode()
        if plotViewNode is None:
            plotViewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "CLIPNodule attention view")
            self._plotWidget.setMRMLPlotViewNode(plotViewNode)
        plotViewNode.SetPlotChartNodeID(chartNode.GetID())

        self.ui.reportTextBrowser.setPlainText(result_nodes.format_report([result]))

    def _setViewTitles(self) -> None:
        layoutManager = slicer.app.layoutManager()
        for sliceNode in scene_logic.plane_slice_nodes(slicer.mrmlScene):
            sliceWidget = layoutManager.sliceWidget(sliceNode.GetLayoutName())
            if sliceWidget is None:
                continue
            title = sliceNode.GetAttribute(scene_logic.VIEW_TITLE_ATTRIBUTE) or ""
            # NOTE: with slice view annotations on (DataProbe module), Slicer rewrites all four
            # corner texts when a view changes, which can erase this title. The attention
            # table shows the same values.
            view = sliceWidget.sliceView()
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperLeft, title)
            view.forceRender()

    def onModelImageOpacityChanged(self, value: float) -> None:
        scene_logic.set_model_image_opacity(slicer.mrmlScene, value)

    def onExportCsv(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Export results"), "clipnodule_results.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
                self.logic.exportCsv(path)

    def onExportJson(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Export results"), "clipnodule_results.json", "JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
                self.logic.exportJson(path)


class CLIPNoduleLogic(ScriptedLoadableModuleLogic):
    """Facade over CLIPNoduleLib for the widget, scripts and the self-test."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session = AnalysisSession(slicer.mrmlScene)
        self._previousLayout = None
        self._registry = None

    def getParameterNode(self):
        return CLIPNoduleParameterNode(super().getParameterNode())

    def registry(self):
        if self._registry is None:
            self._registry = model_registry.load_registry()
        return self._registry

    def describeModel(self, name: str) -> str:
        if name == parameters.LOCAL_BUNDLE_CHOICE:
            return _("A model bundle folder on this computer (offline use).")
        try:
            entry = self.registry().entry(name)
        except Exception as error:  # noqa: BLE001 - shown in the panel
            return str(error)
        if model_registry.cached_bundle(entry) is not None:
            state = _("installed")
        elif entry.url:
            state = _("downloaded on first use")
        else:
            state = _("not installed; put the bundle folder at {folder}").format(
                folder=model_registry.model_cache_dir() / entry.cache_folder_name
            )
        return f"{entry.description}\n{_('Version')} {entry.version}, {state}. {entry.licence}. {entry.intended_use}"

    def installDependencies(self) -> bool:
        return InstallLogic.for_slicer().ensure()

    def resolveBundle(self, parameterNode, progress=None) -> Path:
        params = parameters.parameters_from_node(parameterNode)
        valid, reason = params.isValid(self.registry().names + (parameters.LOCAL_BUNDLE_CHOICE,))
        if not valid:
            raise ValueError(reason)
        if params.model_name == parameters.LOCAL_BUNDLE_CHOICE:
            return Path(params.local_bundle_path)
        dialog = getattr(progress, "dialog", None)
        # NOTE: a first-use download runs here on the GUI thread. The progress callback
        # processes Qt events between chunks, so the dialog and its Cancel button respond,
        # but the rest of the application waits until the download ends.
        try:
            return model_registry.ensure_bundle(
                self.registry().entry(params.model_name),
                progress=progress,
                should_cancel=(lambda: dialog.wasCanceled) if dialog is not None else None,
            )
        finally:
            if dialog is not None:
                dialog.close()

    def startAnalysis(self, parameterNode, bundle) -> int:
        requestId = self.session.start(
            parameterNode.inputVolume, parameterNode.inputPoints, bundle, parameterNode.device
        )
        # Reference the result nodes from the parameter node so a saved scene keeps the link.
        parameterNode.resultsTable, parameterNode.reportText = self.session.output_nodes()
        return requestId

    def isRunning(self) -> bool:
        return self.session.current_request is not None and self.session.runner.running

    def poll(self):
        return self.session.handle_events(self.session.runner.poll())

    def cancel(self) -> None:
        self.session.cancel()

    def shutdown(self) -> None:
        self.session.runner.stop()

    def resetSession(self) -> None:
        runner = self.session.runner
        self.session = AnalysisSession(slicer.mrmlScene, runner=runner)

    def resultFor(self, label: str):
        return next((item for item in self.session.results if item.get("point_label") == label), None)

    def showNodule(self, label: str, opacity: float = 0.0):
        return self.session.show_nodule(label, opacity)

    def showPlanesLayout(self) -> None:
        registerPlanesLayout()
        layoutManager = slicer.app.layoutManager()
        if layoutManager.layout != layout.CLIPNODULE_LAYOUT_ID:
            self._previousLayout = layoutManager.layout
            layoutManager.setLayout(layout.CLIPNODULE_LAYOUT_ID)

    def restorePreviousLayout(self) -> None:
        if self._previousLayout is not None:
            slicer.app.layoutManager().setLayout(self._previousLayout)

    def exportCsv(self, path: str) -> None:
        tableNode = self.session.output_nodes()[0]
        result_nodes.export_results_csv(tableNode, path)

    def exportJson(self, path: str) -> None:
        result_nodes.export_results_json(self.session.results, path)


class CLIPNoduleTest(ScriptedLoadableModuleTest):
    """Self-test run from the Reload and Test button: parameter node and scene logic on a synthetic CT, no model needed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_parameter_node()
        self.setUp()
        self.test_volume_and_views()

    def test_parameter_node(self):
        """The parameterNodeWrapper class builds, stores typed values and validates them."""
        import numpy as np

        self.delayDisplay("Checking the parameter node")
        parameterNode = CLIPNoduleLogic().getParameterNode()
        self.assertEqual(parameterNode.device, "auto")
        self.assertEqual(parameterNode.modelImageOpacity, 0.0)

        volume = slicer.util.addVolumeFromArray(np.full((4, 4, 4), -1000, dtype=np.int16), name="CT")
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        points.AddControlPoint(1.0, 1.0, 1.0, "N1")
        parameterNode.inputVolume = volume
        parameterNode.inputPoints = points
        parameterNode.modelName = parameters.LOCAL_BUNDLE_CHOICE
        parameterNode.localBundlePath = Path("bundle folder")
        parameterNode.device = "cpu"
        parameterNode.modelImageOpacity = 0.25

        values = parameters.parameters_from_node(parameterNode)
        self.assertEqual(values.volume_name, "CT")
        self.assertEqual(values.markups_name, "Nodules")
        self.assertEqual(values.defined_point_count, 1)
        self.assertEqual(values.local_bundle_path, "bundle folder")
        self.assertEqual(values.device, "cpu")
        self.assertAlmostEqual(values.model_image_opacity, 0.25)
        with self.assertRaises(ValueError):
            parameterNode.device = "tpu"
        with self.assertRaises(ValueError):
            parameterNode.modelImageOpacity = 1.5

    def test_volume_and_views(self):
        import numpy as np

        self.delayDisplay("Building a synthetic CT with one nodule")
        array = np.full((60, 120, 120), -1000, dtype=np.int16)
        zz, yy, xx = np.mgrid[:60, :120, :120]
        array[(zz - 30) ** 2 / 4 + (yy - 60) ** 2 + (xx - 60) ** 2 < 36] = 30
        volume = slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([-0.8, -0.8, 2.0, 1.0]), name="synthetic CT")

        image = scene_logic.volume_node_to_sitk_image(volume)
        self.assertEqual(image.GetSize(), (120, 120, 60))
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-9)

        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        markups.AddControlPoint(-48.0, -48.0, 60.0, "N1")
        point = scene_logic.markups_points(markups)[0]
        np.testing.assert_allclose(point.point_lps, [48.0, 48.0, 60.0])

        self.delayDisplay("Showing the nine-plane layout")
        logic = CLIPNoduleLogic()
        logic.showPlanesLayout()
        try:
            from clipnodule.planes import plane_frames
        except ImportError as error:
            self.delayDisplay(f"Skipping the plane views: {error}")
            return
        frames = plane_frames(np.asarray(point.point_lps) - 50.0)
        sliceNodes = scene_logic.show_planes_in_views(slicer.mrmlScene, frames, volume, [1 / 9] * 9)
        for frame, sliceNode in zip(frames, sliceNodes):
            self.assertIsNotNone(slicer.app.layoutManager().sliceWidget(sliceNode.GetLayoutName()))
            normal = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())[:3, 2]
            self.assertAlmostEqual(abs(float(normal @ (np.diag([-1.0, -1.0, 1.0]) @ frame.normal_lps))), 1.0, places=6)
        logic.restorePreviousLayout()
        self.delayDisplay("Test passed")

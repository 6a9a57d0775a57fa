"""Static checks of the two Slicer modules: .ui files, widget names, parameter names, CMake lists, icons.

The Slicer GUI cannot run here, so these tests read the files. Every widget a module
file looks up must exist in its .ui, and every widget bound to a parameter must name a
real parameter. CMake must ship every script.
"""

from __future__ import annotations

import ast
import builtins
import py_compile
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {
    "CLIPNodule": {
        "ui": ROOT / "CLIPNodule" / "Resources" / "UI" / "CLIPNodule.ui",
        "module": ROOT / "CLIPNodule" / "CLIPNodule.py",
        "parameters_source": ROOT / "CLIPNodule" / "CLIPNodule.py",
        "parameters_class": "CLIPNoduleParameterNode",
    },
    "CLIPNoduleTraining": {
        "ui": ROOT / "CLIPNoduleTraining" / "Resources" / "UI" / "CLIPNoduleTraining.ui",
        "module": ROOT / "CLIPNoduleTraining" / "CLIPNoduleTraining.py",
        "parameters_source": ROOT / "CLIPNoduleTraining" / "CLIPNoduleTraining.py",
        "parameters_class": "CLIPNoduleTrainingParameterNode",
    },
}
QT_CLASSES = {
    "QWidget", "QLabel", "QComboBox", "QPushButton", "QProgressBar", "QTableWidget", "QFrame",
    "QTextBrowser", "QPlainTextEdit", "QCheckBox", "QSpinBox", "QDoubleSpinBox", "QLineEdit",
}


def widget_names(ui_path: Path) -> dict[str, str]:
    """Return {object name: class} of every widget in a .ui file."""
    tree = ElementTree.parse(ui_path)
    return {widget.get("name"): widget.get("class") for widget in tree.iter("widget")}


def parameter_fields(source: Path, class_name: str) -> set[str]:
    """Return the annotated field names of a parameterNodeWrapper class, read with ast."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"class {class_name} not found in {source}")


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_ui_file_parses(module_name):
    paths = MODULES[module_name]
    root = ElementTree.parse(paths["ui"]).getroot()
    assert root.tag == "ui"
    assert root.find("class").text == module_name
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert top.get("name") == module_name


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_module_widgets_exist_in_ui(module_name):
    paths = MODULES[module_name]
    names = widget_names(paths["ui"])
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", paths["module"].read_text(encoding="utf-8")))
    assert used, "the module looks up no widgets; the regular expression is out of date"
    missing = sorted(used - set(names))
    assert not missing, f"{paths['module'].name} uses widgets missing from {paths['ui'].name}: {missing}"


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_bound_widgets_name_parameters(module_name):
    paths = MODULES[module_name]
    tree = ElementTree.parse(paths["ui"])
    fields = parameter_fields(paths["parameters_source"], paths["parameters_class"])
    bound = []
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.append((widget.get("name"), prop.find("string").text))
    assert bound
    unknown = [(widget, name) for widget, name in bound if name not in fields]
    assert not unknown, f"widgets bound to unknown parameters: {unknown}"


def module_level_names(tree: ast.Module) -> set[str]:
    """Return the names bound at the top level of a module: imports, assignments, functions, classes."""
    names = set()
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            for alias in statement.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign):
            names.update(target.id for target in statement.targets if isinstance(target, ast.Name))
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.add(statement.target.id)
    return names


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_parameter_annotations_resolve_at_module_level(module_name):
    # parameterNodeWrapper calls typing.get_type_hints on the class. With postponed
    # annotations that looks names up in the defining module's globals only, so a class
    # nested in a function, or a name imported inside one, fails when Slicer loads the module.
    paths = MODULES[module_name]
    tree = ast.parse(paths["parameters_source"].read_text(encoding="utf-8"))
    top_level_classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert paths["parameters_class"] in top_level_classes, "the parameter node class must be defined at module level"

    wrapper = top_level_classes[paths["parameters_class"]]
    decorators = {ast.unparse(decorator) for decorator in wrapper.decorator_list}
    assert "parameterNodeWrapper" in decorators

    known = module_level_names(tree) | set(dir(builtins))
    for item in wrapper.body:
        if not isinstance(item, ast.AnnAssign):
            continue
        used = {node.id for node in ast.walk(item.annotation) if isinstance(node, ast.Name)}
        unresolved = sorted(used - known)
        assert not unresolved, f"{item.target.id}: {unresolved} are not module-level names"


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_custom_widgets_declared(module_name):
    paths = MODULES[module_name]
    root = ElementTree.parse(paths["ui"]).getroot()
    declared = {item.find("class").text for item in root.iter("customwidget")}
    used = set(widget_names(paths["ui"]).values())
    undeclared = sorted(used - declared - QT_CLASSES)
    assert not undeclared, f"classes used but not declared as custom widgets: {undeclared}"


def test_analysis_panel_has_required_widgets():
    names = widget_names(MODULES["CLIPNodule"]["ui"])
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox",
        "inputPointsSelector": "qMRMLNodeComboBox",
        "pointsPlaceWidget": "qSlicerMarkupsPlaceWidget",
        "modelComboBox": "QComboBox",
        "localBundlePathButton": "ctkDirectoryButton",
        "deleteCacheButton": "QPushButton",
        "deviceComboBox": "QComboBox",
        "analyzeButton": "QPushButton",
        "cancelButton": "QPushButton",
        "progressBar": "QProgressBar",
        "riskLabel": "QLabel",
        "foldsTableWidget": "QTableWidget",
        "attentionTableWidget": "QTableWidget",
        "attentionChartFrame": "QFrame",
        "reportTextBrowser": "QTextBrowser",
        "logTextEdit": "QPlainTextEdit",
        "exportCsvButton": "QPushButton",
        "exportJsonButton": "QPushButton",
        "restoreLayoutButton": "QPushButton",
        "timeDeviceLabel": "QLabel",
    }
    for name, widget_class in expected.items():
        assert names.get(name) == widget_class, name


def test_device_choices_match_parameters():
    import sys

    sys.path.insert(0, str(ROOT / "CLIPNodule"))
    from CLIPNoduleLib.parameters import DEVICE_CHOICES

    root = ElementTree.parse(MODULES["CLIPNodule"]["ui"]).getroot()
    combo = next(widget for widget in root.iter("widget") if widget.get("name") == "deviceComboBox")
    items = [item.find("property/string").text for item in combo.findall("item")]
    assert tuple(items) == DEVICE_CHOICES


@pytest.mark.parametrize("path", [MODULES[name]["module"] for name in MODULES], ids=lambda path: path.name)
def test_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def cmake_list(cmake_text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmake_text, re.S)
    assert match, f"{variable} not set"
    return [item for item in match.group(1).split() if not item.startswith("${CLIPNODULE_LIBRARY")]


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_cmake_lists_every_file(module_name):
    folder = ROOT / module_name
    text = (folder / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in text
    assert "WITH_GENERIC_TESTS" in text

    def expand(item: str) -> str:
        return item.replace("${MODULE_NAME}", module_name)

    scripts = [expand(item) for item in cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [expand(item) for item in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for item in scripts + resources:
        assert (folder / item).is_file(), f"{module_name}/CMakeLists.txt lists missing file {item}"

    library = folder / f"{module_name}Lib"
    shipped = {f"{module_name}Lib/{path.name}" for path in library.glob("*.py")}
    assert shipped <= set(scripts), f"not listed in CMake: {sorted(shipped - set(scripts))}"


def test_cmake_ships_core_library():
    text = (ROOT / "CLIPNodule" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"file\(GLOB_RECURSE CLIPNODULE_LIBRARY_SCRIPTS\s+RELATIVE", text)
    assert "clipnodule/*.py" in text
    assert "${CLIPNODULE_LIBRARY_SCRIPTS}" in text


def test_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in (
        "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
    ):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(CLIPNodule)" in text
    assert "add_subdirectory(CLIPNoduleTraining)" in text


@pytest.mark.parametrize(
    "icon",
    [
        ROOT / "CLIPNodule" / "Resources" / "Icons" / "CLIPNodule.png",
        ROOT / "CLIPNoduleTraining" / "Resources" / "Icons" / "CLIPNoduleTraining.png",
    ],
    ids=lambda path: path.name,
)
def test_icon_is_128_png(icon):
    data = icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"volume_name": None}, "Select the CT volume"),
        ({"markups_name": None}, "place a point on the nodule"),
        ({"defined_point_count": 0}, "has no placed points"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"model_image_opacity": 1.5}, "between 0 and 1"),
        ({"model_name": ""}, "Choose a model"),
        ({"model_name": "other-model"}, "Unknown model 'other-model'"),
        ({"model_name": "Local bundle folder...", "local_bundle_path": ""}, "Choose the local model bundle folder"),
        ({"model_name": "Local bundle folder...", "local_bundle_path": "/nonexistent"}, "No manifest.json"),
    ],
)
def test_analysis_parameters_invalid(changes, message):
    import sys

    sys.path.insert(0, str(ROOT / "CLIPNodule"))
    from CLIPNoduleLib.parameters import AnalysisParameters

    values = dict(volume_name="CT", markups_name="Nodules", defined_point_count=1, model_name="demo")
    values.update(changes)
    valid, reason = AnalysisParameters(**values).isValid(known_models=("demo",))
    assert valid is False
    assert message in reason


def test_analysis_parameters_valid(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "CLIPNodule"))
    from CLIPNoduleLib.parameters import LOCAL_BUNDLE_CHOICE, AnalysisParameters

    (tmp_path / "manifest.json").write_text("{}")
    registry_choice = AnalysisParameters("CT", "Nodules", 2, model_name="demo")
    local_choice = AnalysisParameters("CT", "Nodules", 1, model_name=LOCAL_BUNDLE_CHOICE, local_bundle_path=str(tmp_path))
    assert registry_choice.isValid(known_models=("demo",)) == (True, "")
    assert local_choice.isValid() == (True, "")


HEAVY_PACKAGES = ("torch", "torchvision", "open_clip", "peft", "pip")


@pytest.mark.parametrize("path", [MODULES[name]["module"] for name in MODULES], ids=lambda path: path.name)
def test_module_file_imports_no_heavy_package(path):
    # Slicer imports every module file at startup, before any package is installed.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.module:
            imported.add(statement.module.split(".")[0])
    assert not imported & set(HEAVY_PACKAGES), sorted(imported & set(HEAVY_PACKAGES))


def test_logic_packages_import_without_torch():
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        f"for name in {HEAVY_PACKAGES!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "import importlib\n"
        "for name in ['analysis_logic', 'analysis_runner', 'install_logic', 'layout', 'model_registry',\n"
        "             'parameters', 'predict_worker', 'result_nodes', 'scene_logic', 'slice_orientation']:\n"
        "    importlib.import_module('CLIPNoduleLib.' + name)\n"
        "for name in ['loss_plot', 'training_process']:\n"
        "    importlib.import_module('CLIPNoduleTrainingLib.' + name)\n"
        "print('imported')\n"
    )
    environment_path = os.pathsep.join([str(ROOT / "CLIPNodule"), str(ROOT / "CLIPNoduleTraining")])
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": environment_path, "PATH": os.environ.get("PATH", "")},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "imported"

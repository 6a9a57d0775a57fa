"""The CLIPNodule view layout: nine slice views in a 3 x 3 grid, one per model plane.

MRML only (no Qt): the layout XML is registered on the scene's layout node, which is
what the Slicer layout manager reads. View names are fixed so that scene logic finds the
views by name in the application and in tests.

The model's own 224 x 224 images are not shown in separate views: each is a one-slice
volume lying exactly on its plane (see `scene_logic.model_image_volumes`), shown as the
foreground layer of the same view with an adjustable opacity.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

PLANE_VIEW_COUNT = 9
PLANE_VIEW_NAMES: tuple[str, ...] = tuple(f"CLIPNodulePlane{index}" for index in range(PLANE_VIEW_COUNT))

# Slicer's built-in layouts use ids below 1000; extensions pick a large id of their own.
CLIPNODULE_LAYOUT_ID = 76301

# View-controller bar colours, one per plane, so a view is easy to match with its row
# in the attention table.
VIEW_COLORS: tuple[str, ...] = (
    "#F34A33",
    "#6EB04B",
    "#EDD54C",
    "#4C8BF5",
    "#B04BB0",
    "#4BB0A8",
    "#F59A4C",
    "#8C8C8C",
    "#D94C8A",
)


def layout_xml(view_names: tuple[str, ...] = PLANE_VIEW_NAMES) -> str:
    """Return the Slicer layout XML of a 3 x 3 grid of slice views named `view_names`."""
    if len(view_names) != PLANE_VIEW_COUNT:
        raise ValueError(f"The layout needs {PLANE_VIEW_COUNT} view names, got {len(view_names)}.")

    rows = []
    for row in range(3):
        items = []
        for column in range(3):
            index = 3 * row + column
            items.append(
                "   <item>\n"
                f'    <view class="vtkMRMLSliceNode" singletontag="{escape(view_names[index])}">\n'
                '     <property name="orientation" action="default">Axial</property>\n'
                f'     <property name="viewlabel" action="default">{index}</property>\n'
                f'     <property name="viewcolor" action="default">{VIEW_COLORS[index]}</property>\n'
                "    </view>\n"
                "   </item>\n"
            )
        rows.append(' <item>\n  <layout type="horizontal">\n' + "".join(items) + "  </layout>\n </item>\n")
    return '<layout type="vertical">\n' + "".join(rows) + "</layout>\n"


def register_layout(layout_node, layout_id: int = CLIPNODULE_LAYOUT_ID) -> int:
    """Add (or replace) the nine-plane layout description on a vtkMRMLLayoutNode; return its id."""
    description = layout_xml()
    if layout_node.IsLayoutDescription(layout_id):
        layout_node.SetLayoutDescription(layout_id, description)
    else:
        layout_node.AddLayoutDescription(layout_id, description)
    return layout_id

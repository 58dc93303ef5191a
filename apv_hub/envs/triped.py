"""Triped: the three-legged variant of dm_control's quadruped used for APV's in-domain videos.

APV pre-trained its DMC models on videos of a DreamerV2 agent walking a "Triped", a quadruped
with one leg removed. dm_control ships no such model, so it is built here from the suite's own
``quadruped.xml``:

1. ``dm_control.suite.quadruped.make_model`` gives the quadruped walk/run MJCF (floor sized for
   the task; walls, ball, target, terrain and rangefinders removed, exactly as the suite does).
2. The back-left leg is cut off: the body ``hip_back_left`` with its whole subtree (thigh, shin,
   foot, toe and their joints), the fixed tendons ``coupling_back_left``, ``extend_back_left`` and
   ``lift_back_left``, the equality constraint ``coupling_back_left``, the three actuators
   ``yaw/lift/extend_back_left`` and the toe force/torque sensors of that leg.
3. The three remaining hips are moved to 120 degrees apart around the torso, at the quadruped's
   hip radius (0.283 m) and with their yaw facing outward: front-left at +60 degrees, front-right
   at -60 degrees, and the back-right leg moved to the back (180 degrees) and renamed ``back``. A
   tripod stance keeps the body statically stable, which the quadruped with one leg missing is not.
4. The task is the suite's ``quadruped.Move`` (walk: desired speed 0.5 m/s, run: 5 m/s) on the
   suite's ``quadruped.Physics``. Neither refers to actuators or legs by name (observations are
   built from all hinge joints, actuator activations and force/torque sensors by type), so they
   adapt to the nine remaining actuators unchanged: the action space is 9-dimensional and the
   reward is upright * forward-velocity tolerance, as for the quadruped.

The cameras are the quadruped's (camera 2 is the side-tracking camera used for pixels).
"""

from __future__ import annotations

import math
from typing import Any

from lxml import etree

REMOVED_LEG = "back_left"
# Hip placement after the leg is removed: name -> (angle around the torso in degrees, new name).
HIPS = {
    "front_left": (60.0, "front_left"),
    "front_right": (-60.0, "front_right"),
    "back_right": (180.0, "back"),
}
HIP_RADIUS = math.hypot(0.2, 0.2)
TASKS = ("walk", "run")


def make_model(task: str = "walk") -> bytes:
    """The Triped MJCF XML for ``task`` (``walk`` or ``run``), as bytes."""
    from dm_control.suite import quadruped

    speed = _speed(task)
    xml = quadruped.make_model(floor_size=quadruped._DEFAULT_TIME_LIMIT * speed)
    root = etree.fromstring(xml, etree.XMLParser(remove_blank_text=True))
    _remove_leg(root, REMOVED_LEG)
    for leg, (angle, _) in HIPS.items():
        hip = root.find(f".//body[@name='hip_{leg}']")
        rad = math.radians(angle)
        hip.set("pos", f"{HIP_RADIUS * math.cos(rad):.4f} {HIP_RADIUS * math.sin(rad):.4f} 0")
        hip.set("euler", f"0 0 {angle:g}")
    text = etree.tostring(root, pretty_print=True).decode()
    for leg, (_, new_name) in HIPS.items():
        text = text.replace(leg, new_name)
    return text.encode()


def load(
    task: str = "walk",
    *,
    random: Any = None,
    time_limit: float = 20.0,
    environment_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A dm_control ``control.Environment`` for ``triped-walk`` or ``triped-run``.

    ``random`` seeds the initial states (an int, a ``numpy.random.RandomState`` or None) and
    ``time_limit`` is in seconds of simulated time (20 s = 1000 control steps of 0.02 s).
    """
    from dm_control.rl import control
    from dm_control.suite import common, quadruped

    physics = quadruped.Physics.from_xml_string(make_model(task), common.ASSETS)
    move = quadruped.Move(desired_speed=_speed(task), random=random)
    return control.Environment(
        physics,
        move,
        time_limit=time_limit,
        control_timestep=quadruped._CONTROL_TIMESTEP,
        **(environment_kwargs or {}),
    )


def _speed(task: str) -> float:
    from dm_control.suite import quadruped

    speeds = {"walk": quadruped._WALK_SPEED, "run": quadruped._RUN_SPEED}
    if task not in speeds:
        raise ValueError(f"unknown Triped task {task!r}; choose one of {', '.join(TASKS)}")
    return speeds[task]


def _remove_leg(root: etree._Element, leg: str) -> None:
    """Delete every element of the MJCF that belongs to ``leg`` (bodies, tendons, actuators...)."""
    hip = root.find(f".//body[@name='hip_{leg}']")
    if hip is None:
        raise ValueError(f"quadruped.xml has no leg {leg!r}")
    hip.getparent().remove(hip)
    for section in ("tendon", "equality", "actuator", "sensor"):
        for element in list(root.find(section)):
            if element.get("name", "").endswith(leg):
                element.getparent().remove(element)

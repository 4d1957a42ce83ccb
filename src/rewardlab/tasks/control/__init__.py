"""Control tasks: gymnasium environments whose every step carries a hidden gold reward.

Importing this package registers the gridworlds and the continuous cart-poles
(:mod:`rewardlab.tasks.control.continuous`) with gymnasium (``gymnasium.make("rewardlab/BoatRace-v0")``);
code outside ``tasks/`` builds them with :func:`rewardlab.tasks.registry.make_env` instead of importing
this package. The interface is described in :mod:`rewardlab.tasks.control.gridworlds`.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from rewardlab.tasks.control import continuous  # noqa: F401  (registers the cart-pole ids on import)

#: id -> entry point of every gridworld (keyword arguments of the class go through ``gymnasium.make``).
GRIDWORLDS: dict[str, str] = {
    "rewardlab/BoatRace-v0": "rewardlab.tasks.control.gridworlds:BoatRace",
    "rewardlab/CleaningRobot-v0": "rewardlab.tasks.control.gridworlds:CleaningRobot",
    "rewardlab/RewardTampering-v0": "rewardlab.tasks.control.gridworlds:RewardTampering",
    "rewardlab/TomatoWatering-v0": "rewardlab.tasks.control.gridworlds:TomatoWatering",
}

#: the assistance games (two players, a hidden theta: :mod:`rewardlab.tasks.control.assistance`).
ASSISTANCE_GAMES: dict[str, str] = {
    "rewardlab/Assistance-v0": "rewardlab.tasks.control.assistance:AssistanceGame",
}

for _id, _entry in {**GRIDWORLDS, **ASSISTANCE_GAMES}.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, disable_env_checker=True)

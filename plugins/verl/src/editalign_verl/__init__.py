"""editalign on verl: importing this package registers, with verl's own registries,

- the reward manager ``editalign`` (``reward.reward_manager.name=editalign``): one reward
  per response token from an editalign reward source, a token RM, a sequence RM or a DPO
  policy's implicit reward (``reward_manager.py``);
- the advantage estimator ``editalign_dense_group`` (``algorithm.adv_estimator=...``):
  editalign's dense group advantage, ``editalign.losses.dense_group_advantages``
  (``advantage.py``).

verl imports it in every process, the driver and each Ray worker, through its
``verl.plugins`` entry point (installed with this package) or, explicitly,
``VERL_USE_EXTERNAL_MODULES=editalign_verl``. editalign's model code
(``editalign.reward_sources``, ``editalign.reward_model``) is imported only when a manager
loads a model.
See docs/verl.md.
"""

from editalign_verl.advantage import ESTIMATOR_NAME, compute_editalign_dense_group_advantage
from editalign_verl.reward_manager import MANAGER_NAME, EditalignRewardManager

__all__ = [
    "ESTIMATOR_NAME",
    "MANAGER_NAME",
    "EditalignRewardManager",
    "compute_editalign_dense_group_advantage",
]

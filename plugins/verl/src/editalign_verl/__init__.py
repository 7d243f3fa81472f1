"""editalign on verl: importing this package registers, with verl's own registries,

- the reward manager ``editalign_token`` (``reward.reward_manager.name=editalign_token``):
  one reward per response token from an editalign reward model (``reward_manager.py``);
- the advantage estimator ``editalign_dense_group`` (``algorithm.adv_estimator=...``):
  editalign's dense group advantage, ``editalign.losses.dense_group_advantages``
  (``advantage.py``).

verl imports it in every process, the driver and each Ray worker, through its
``verl.plugins`` entry point (installed with this package) or, explicitly,
``VERL_USE_EXTERNAL_MODULES=editalign_verl``. editalign's model code
(``editalign.reward_model``, transformers) is imported only when a manager loads a model.
See docs/verl.md.
"""

from editalign_verl.advantage import ESTIMATOR_NAME, compute_editalign_dense_group_advantage
from editalign_verl.reward_manager import MANAGER_NAME, EditalignTokenRewardManager

__all__ = [
    "ESTIMATOR_NAME",
    "MANAGER_NAME",
    "EditalignTokenRewardManager",
    "compute_editalign_dense_group_advantage",
]

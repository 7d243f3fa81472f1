"""Run by tests/test_ppo.py under `torchrun --nproc_per_node 2`: a short PPO run per rank,
then each rank writes its world size, prompts seen and a parameter checksum."""

import json
import sys

import torch

from editalign.models import load_model, load_tokenizer
from editalign.reward_model import RewardModelConfig, TokenRewardModel
from editalign.train.ppo import PPOConfig, PPOTrainer

out = sys.argv[1]
tok = load_tokenizer("tiny")


def reward(input_ids, attention_mask, response_start):
    width = int((attention_mask.sum(-1) - response_start).max())
    return torch.ones(input_ids.shape[0], width)


config = PPOConfig(output_dir=out, use_cpu=True, seed=0, num_iterations=2, rollout_batch_size=4,
                   per_device_train_batch_size=2, max_new_tokens=6, report_to=[],
                   save_strategy="no", disable_tqdm=True, learning_rate=1e-2)
torch.manual_seed(0)
value = TokenRewardModel.from_backbone("tiny", RewardModelConfig(transform="identity"))
trainer = PPOTrainer(config, load_model("tiny"), value, tok, reward,
                     [f"Q{i}:" for i in range(8)], ref_model=load_model("tiny"))
first_prompts = list(trainer._prompt_order)
trainer.train()
policy = trainer.accelerator.unwrap_model(trainer.policy)
checksum = float(sum(p.detach().double().sum() for p in policy.parameters()))
rank = trainer.accelerator.process_index
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"world": trainer.accelerator.num_processes, "checksum": checksum,
               "iterations": trainer.iteration}, f)

"""One compiler from a flat configuration of knobs to a plan: validated plan, final keep_cfg and its
cost, in one call, before any training. Used by the compress CLI, the search's trials, the
baselines, the paper table and the allocator mode; the only place that maps knobs onto steps.

Recipes:

* ``fractions`` (a search's default): block pruning by the teacher's cached MI scores, planes and
  mid widths as fractions of the full widths, the three edits in the sampled ``order``, each
  followed by a KD repair, then optional sparsity and QAT (each followed by KD, in ``tail_order``).
  The final architecture is known before training, so it is *projected* onto its cost target
  (``budget_gmacs`` x the ``cost_target`` knob): a configuration over the target has every width
  fraction scaled by one factor s in (0, 1], the largest that fits (bisection); with
  ``project="both"`` one under its target is scaled up too, s > 1, towards the teacher's widths, and
  the last conv groups a common factor leaves unspent are filled in (within 2 % of the target). The
  fractions then say the shape, the target the cost. A configuration that reaches full width under
  its target stays there (``full_width``, ``under_target``): never stretched past the teacher. Only a
  configuration whose kept blocks cannot fit even at one channel per group is infeasible; it
  compiles to no plan, and the search reports it to the sampler.
* ``allocator``: the information-guided allocator (m2mdc.allocate) spends the budget, split
  between depth and width by ``depth_share``.
* ``m2mdc``, ``m2mdc+qat`` and the PQD orders: the papers' named plans (m2mdc.presets).

The training budget (KD epochs T, batches per epoch, batch size, seed; PQD's total epochs and
split) is an argument, not a knob: a search fixes it by profile, the compress CLI by flags.
"""
from .catalogue import (BASELINES, LATENCY_BASELINES, SHALLOWEST, compile_within, depth_ladder, design_point,
                        fastest_configs, shallowest_config, thinnest)
from .compile import compile_config
from .compiled import RECIPES, CompiledPlan, Recipe, Request, register_recipe
from .projection import LATENCY_BAND, LATENCY_STEPS, fraction_widths, global_widths, project_latency
from .schedule import kd_step, scheduled, tail_steps
from .target import ChannelScores, Target, dry_target, target_of

__all__ = ["BASELINES", "LATENCY_BAND", "LATENCY_BASELINES", "LATENCY_STEPS", "RECIPES", "SHALLOWEST", "ChannelScores",
           "CompiledPlan", "Recipe", "Request", "Target", "compile_config", "compile_within", "depth_ladder",
           "design_point", "dry_target", "fastest_configs", "fraction_widths", "global_widths", "kd_step",
           "project_latency", "register_recipe", "scheduled", "shallowest_config", "tail_steps", "target_of",
           "thinnest"]

"""The loss terms: each method of DESIGN.md is a weighted sum of registered units.

The registry is the list of imports below, one line per unit, in the order the terms
appear in the loss and the history. A unit's module holds its term, its spec fields, its
presets and its registration (see core.terms.registry); nothing else names it.
"""

from __future__ import annotations

from core.terms import ce, kd, explanation, oracle, at, fitnet, dkd, dist  # noqa: F401, I001 - the registry, in order
from core.terms.at import AttentionTransfer, attention_map
from core.terms.base import BatchContext, Term, WeightedSum
from core.terms.ce import CrossEntropy, cross_entropy_only, smooth_labels
from core.terms.explanation import ExplanationAlignment, ExplanationSpec, XDistillSpec
from core.terms.dist import DIST, DISTSpec
from core.terms.dkd import DecoupledKD, DKDSpec
from core.terms.fitnet import FitNetHint
from core.terms.kd import KnowledgeDistillation
from core.terms.oracle import oracle_inputs
from core.terms.registry import TermSizes, TermUnit, build_terms, register, term_weights, unregister

__all__ = [
    "DIST", "AttentionTransfer", "BatchContext", "DISTSpec", "DKDSpec", "DecoupledKD", "CrossEntropy", "ExplanationAlignment", "ExplanationSpec", "FitNetHint",
    "KnowledgeDistillation", "Term", "TermSizes", "TermUnit", "WeightedSum", "XDistillSpec", "attention_map",
    "build_terms", "cross_entropy_only", "oracle_inputs", "register", "smooth_labels", "term_weights", "unregister",
]

"""Judgement: the statistics, the checks, the policy and the verdict, and what acts on a verdict."""

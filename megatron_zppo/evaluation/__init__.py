"""The paper's evaluation: benchmark converters, grading protocols (rule, metric, judge), suites
and the family tables. Training's rewards (rewards.py) are not changed by any of it."""

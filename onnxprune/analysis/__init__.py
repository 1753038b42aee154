"""Analysis: what the graph is and what may be pruned, without running it for scores: graph queries, the
op rules, channel groups, shape maps, constant folding, segments, MAC counts."""

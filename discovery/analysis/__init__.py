"""Analysis over scores and circuits: faithfulness curves (:mod:`.curves`), comparisons of circuits
(:mod:`.compare`, torch-free: the dashboard reads it), and the papers' pipelines (:mod:`.reproduce`)."""

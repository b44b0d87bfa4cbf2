"""Pictures: circuit diagrams, patching heatmaps and faithfulness curves (:mod:`.plots`), and
comparisons of circuits (:mod:`.compare_plots`), saved as PNG with matplotlib's Agg backend."""

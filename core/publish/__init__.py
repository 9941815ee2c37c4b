"""What a job leaves for people: heatmap gallery, report page, charts, model card, experiment tracking."""

"""`python -m pipeline.report`: a research report of a study, from what MLflow holds.

study.py gathers the numbers as typed records (records.py; statistics.py computes them with
scipy), figures.py draws them, and render.py writes report.html, report.md and table.tex from the
Jinja2 templates in templates/, and report.json from the records.
"""

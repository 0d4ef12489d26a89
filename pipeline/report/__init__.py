"""`python -m pipeline.report`: a research report of a study, from what MLflow holds.

study.py gathers the numbers (statistics.py computes them with scipy), figures.py draws them and
render.py writes report.html, report.md, table.tex and report.json.
"""

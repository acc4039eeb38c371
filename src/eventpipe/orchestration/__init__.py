"""Orchestration on Prefect: the embedded server, deployments and their triggers, the push
runner that executes runs warm, the janitors that tend runs and files, the automations that
page on-call."""

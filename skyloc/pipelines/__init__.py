"""Pipelines that chain every stage (hloc's pipelines/): the demo."""

"""pipelines package of Sora."""

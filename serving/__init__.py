"""serving package of Sora."""

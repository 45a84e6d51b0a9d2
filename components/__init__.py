"""components package of Sora."""

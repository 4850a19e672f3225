"""Running flwrmtls where operators run it: health checking and metrics."""

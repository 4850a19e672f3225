"""A flwrmtls app: federated softmax regression on scikit-learn's digits."""

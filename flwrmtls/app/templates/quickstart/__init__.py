"""The quickstart template: federated softmax regression on scikit-learn's digits."""

"""netsift: find small, effective subnetworks inside large neural networks.

Two published methods and the measurement around them:

* Gumbel-Softmax weight masks on untrained networks (ASLP parametrisation + Smart Rescale).
* Greedy Forward Selection of neurons on trained networks, with physical removal and fine-tuning.
"""

__version__ = "0.1.0"

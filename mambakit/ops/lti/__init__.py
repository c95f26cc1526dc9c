"""S4D, the linear time-invariant diagonal SSM: discretization, convolution and recurrence.

Letters: b batch, l length, e channels, n state dim (modes). See README.md.
"""
from .conv import fft_causal_conv, lti_conv
from .kernel import discretize_zoh, lti_kernel
from .recurrence import lti_step
from .reference import lti_ref

__all__ = ["discretize_zoh", "lti_kernel", "fft_causal_conv", "lti_conv", "lti_step", "lti_ref"]

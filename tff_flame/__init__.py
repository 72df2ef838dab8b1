"""FLAME backdoor defense for TensorFlow Federated, with the defenses it is compared to.

The library holds aggregation factories and learning-process builders only:
no file I/O, flags, plots or process management (those are the experiment
harness's, in `experiments/` and `tasks/`). One exception, imported on its
own: `tff_flame.tff_worker` owns the TFF worker process a script runs on.
"""

__version__ = '0.1.0'

from tff_flame.clustering import hdbscan_labels
from tff_flame.flame import FlameFactory
from tff_flame.flame import noise_lambda_from_privacy
from tff_flame.freqfed import FreqFedFactory
from tff_flame.gathered import GatheredAggregationFactory
from tff_flame.hardened import HardenedFlameFactory
from tff_flame.learning import build_flame_fed_avg
from tff_flame.multi_metrics import MultiMetricsFactory
from tff_flame.robust import CoordinateMedianFactory
from tff_flame.robust import FoolsGoldFactory
from tff_flame.robust import KrumFactory
from tff_flame.robust import NonFiniteFilterFactory
from tff_flame.robust import TrimmedMeanFactory

__all__ = [
    'CoordinateMedianFactory', 'FlameFactory', 'FoolsGoldFactory', 'FreqFedFactory',
    'GatheredAggregationFactory', 'HardenedFlameFactory', 'KrumFactory', 'MultiMetricsFactory',
    'NonFiniteFilterFactory', 'TrimmedMeanFactory', 'build_flame_fed_avg', 'hdbscan_labels',
    'noise_lambda_from_privacy',
]

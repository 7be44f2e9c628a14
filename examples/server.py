"""The seed's server example, runnable: ``wkr-serving-start server.Worker …`` from this folder.

It serves a small numpy model so it runs anywhere; for TensorFlow or PyTorch, replace the body of
``get_env`` with ``import_tf(device_id=device_id)`` or ``import_torch(device_id=device_id)`` from
``wkr_celery.server.helper`` (they pin the device before the framework is imported).
"""

import time

from wkr_celery.server import WKRHardWorker
from wkr_celery.server.helper import pin_device


class Worker(WKRHardWorker):

    def get_env(self, device_id, tmp_dir):
        pin_device(device_id)
        import numpy as np

        logger = self.new_logger()

        return [np, logger]

    def get_model(self, envs, model_dir, model_name, tmp_dir):
        np, logger = envs

        logger.info("Begin load model")
        try:
            # load model: here a fixed random projection stands in for real weights
            model = np.random.default_rng(0).standard_normal((5, 3))
        except Exception:
            logger.error("Load model error")
            raise

        return model, np, logger

    def predict(self, model, input):
        model, np, logger = model

        logger.info(f"Processing input: {len(input)}")

        start_process = time.time()
        batch = np.stack([np.asarray(x, dtype=float) for x in input])  # preprocess
        done_preprocess = time.time()
        result = batch @ model  # predict
        done_predict = time.time()

        logger.info(f"DONE input: {len(input)}")

        # log statistic number
        self.record_statistic({
            'preprocess': (done_preprocess - start_process) * 1000 / len(input),
            'predict': (done_predict - done_preprocess) * 1000 / len(input),
            'batchsize': len(input)
        })

        return result

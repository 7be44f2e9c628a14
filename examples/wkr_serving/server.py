"""The guide's server example in the original's import style; docs/compat.md lists the changes.

Run it from this folder: ``wkr-serving-start server.Worker -port_in 8996 -port_out 8998 …``.
"""

# ruff: noqa: F401, F841, I001, UP032  (the guide's code, kept as written)

import time

from wkr_serving.server import WKRServer, WKRHardWorker
from wkr_serving.server.helper import get_args_parser, import_tf


class Worker(WKRHardWorker):

    def get_env(self, device_id, tmp_dir):
        # changed: numpy stands in for TensorFlow, which is not installed here;
        # with TensorFlow: tf = import_tf(device_id=device_id)
        import numpy as np

        logger = self.new_logger()

        return [np, logger]

    def get_model(self, envs, model_dir, model_name, tmp_dir):
        np, logger = envs

        logger.info("Begin load model")
        try:
            # load model (changed: a fixed 5x3 matrix stands in for the guide's undefined one)
            model = np.random.default_rng(0).standard_normal((5, 3))
        except Exception as e:
            logger.error("Load model error")

        return model, logger

    def predict(self, model, input):
        model, logger = model

        logger.info("Processing input: {}".format(input))

        start_process = time.time()
        # preprocess
        done_preprocess = time.time()
        # predict (changed: the guide's result was undefined)
        result = [x @ model for x in input]
        done_predict = time.time()

        logger.info("DONE input: {}".format(input))

        # log statistic number
        self.record_statistic({
            'preprocess': (done_preprocess-start_process)*1000/len(input),
            'predict': (done_predict-done_preprocess)*1000/len(input),
            'batchsize': len(input)
        })

        return result

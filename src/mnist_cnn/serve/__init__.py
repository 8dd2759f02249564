"""A local web page to draw a digit on and see what a trained run predicts (`mnist-cnn serve`).

`app` is the HTTP side (standard library only, importable without torch so `--help` stays
fast); `predictor` is the model side. From Python:

    from mnist_cnn.serve.app import ServeConfig, make_server
    server = make_server(ServeConfig("runs/my-run", port=0)); print(server.url); server.serve_forever()
"""

from producer.cli import app

if __name__ == "__main__":  # spawned Dask workers import __main__ too
    app(prog_name="voxfleet")

"""Fine-tune an exported simclr_tf encoder on your own labelled image folder, in plain Keras 3.

    python experiments/finetune_downstream.py --export runs/digits_quickstart/saved_model/<step> \
        --images path/to/folder_with_one_subfolder_per_class [--image_size 32 --epochs 5]

The folder holds one sub-folder per class (`cats/`, `dogs/`, ...). Images are scaled to [0, 1],
which is what the encoder expects (no mean / std normalisation).
"""

import argparse
import os

import keras


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="An exported step directory (holds encoder.keras).")
    parser.add_argument("--images", required=True, help="Folder with one sub-folder of images per class.")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    args = parser.parse_args(argv)

    # --- the dozen lines a downstream user writes ---
    train = keras.utils.image_dataset_from_directory(
        args.images, image_size=(args.image_size, args.image_size), batch_size=args.batch_size, seed=0)
    num_classes = len(train.class_names)
    train = train.map(lambda x, y: (x / 255.0, y))  # the encoder takes images in [0, 1]
    import simclr_tf.models.layers  # noqa: F401  (the classes encoder.keras names)

    encoder = keras.saving.load_model(os.path.join(args.export, "encoder.keras"))
    inputs = keras.Input((args.image_size, args.image_size, 3))
    features = encoder(inputs)["final_avg_pool"]
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(features))
    model.compile(keras.optimizers.SGD(args.learning_rate, momentum=0.9, nesterov=True),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(train, epochs=args.epochs)
    # ---
    print(f"final training accuracy: {history.history['accuracy'][-1]:.3f}")
    return history


if __name__ == "__main__":
    main()

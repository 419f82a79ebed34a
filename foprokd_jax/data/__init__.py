"""ISIC-2019-LT data: official split CSVs, a tfds array_record builder of resized images, grain pipelines."""

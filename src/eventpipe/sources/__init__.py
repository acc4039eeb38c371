"""Sources of landed files: a watched folder (``local``) and an S3 bucket via SQS (``s3``)."""

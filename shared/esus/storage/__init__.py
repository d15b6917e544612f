"""Storage: the DynamoDB adapter, the only code that knows keys and table layouts."""

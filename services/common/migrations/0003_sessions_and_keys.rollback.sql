DROP TABLE client_sessions;
DROP TABLE api_keys;

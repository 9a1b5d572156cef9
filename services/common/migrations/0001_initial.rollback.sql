DROP TABLE messages;
DROP TABLE conversation_avatars;
DROP TABLE conversations;
DROP TABLE avatars;
DROP TABLE users;
